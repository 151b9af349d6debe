//! Bulk publish and bulk update: a file (an Arrow IPC stream by default, or CSV, see
//! `ClientBuilder::bulk_format`) uploaded through a presigned URL, then registered with
//! the pipeline.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::configs::{self, RowUpdateConfig, StreamConfig, json_kind};
use super::{Backend, Client, require_id, stream_line};
use crate::error::Error;
use crate::export::local_file::{self as localfile, LocalLine};
use crate::transport::Transport;

impl Client {
    /// Publishes many rows at once: the rows are written as a file in the client's bulk
    /// format (an Arrow IPC stream with the default `arrow` feature, else CSV; see
    /// [`ClientBuilder::bulk_format`](crate::ClientBuilder::bulk_format)), uploaded through
    /// a presigned URL (`POST /storage/presigned-url`, then a multipart upload to the
    /// storage), and appended to the pipeline
    /// (`POST /inference-pipelines/{id}/data` with `performDataMerge: false`).
    ///
    /// Rows are checked as in [`stream_rows`](Self::stream_rows). In CSV, arrays and
    /// objects go into cells as JSON text. In local mode, the rows are appended to the local
    /// file as data-stream lines instead.
    ///
    /// The registration is not sent again after a server error or a lost answer (the
    /// platform may have appended the rows already, and would append them twice): the
    /// error is returned, and the rows may or may not be in the platform.
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
        self.publish_rows(
            pipeline_id,
            config,
            rows,
            &mut localfile::Appends::default(),
        )
        .await
    }

    /// [`publish_batch`](Self::publish_batch), as one part of a call (`op`) that may
    /// publish several.
    pub(crate) async fn publish_rows<C: StreamConfig + ?Sized>(
        &self,
        pipeline_id: &str,
        config: &C,
        rows: &[Value],
        op: &mut localfile::Appends,
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
                localfile::append_with(path, &lines, self.inner.trace_file_max_bytes, op)
            }
            Backend::Remote(t) => self
                .send_rows(t, pipeline_id, rows, config, None)
                .await
                .map(drop),
        }
    }

    /// Updates many rows at once, matched by the inference ids in `inference_id_column`:
    /// the columns of `rows` are merged into the existing rows through the same upload
    /// as [`publish_batch`](Self::publish_batch), registered with
    /// `performDataMerge: true` and a config of `config` plus `inferenceIdColumnName`.
    ///
    /// Every row must be an object with a non-null string or number in
    /// `inference_id_column`, and the columns `config` names. Each row sets only its own
    /// columns: rows with different keys are merged in separate uploads (one per set of
    /// keys, in the order of each set's first row), since a merge sets every column of its
    /// upload, a missing one as null. Rows for the same id with different keys are
    /// therefore applied set by set, not row by row. After a failure,
    /// [`Error::BulkPartial`] counts the rows of the sets merged before it (merges can be
    /// sent again whole). In local mode, each row is appended to the local file as a
    /// row-update line (without the id column).
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
        let mut op = localfile::Appends::default();
        self.update_rows(pipeline_id, inference_id_column, config, rows, &mut op)
            .await
    }

    /// [`update_batch`](Self::update_batch), as one part of a call (`op`) that may update
    /// several.
    pub(crate) async fn update_rows(
        &self,
        pipeline_id: &str,
        inference_id_column: &str,
        config: Option<RowUpdateConfig>,
        rows: &[Value],
        op: &mut localfile::Appends,
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
                localfile::append_with(path, &lines, self.inner.trace_file_max_bytes, op)
            }
            Backend::Remote(t) => {
                let mut data_config = config.to_json();
                data_config.insert(
                    "inferenceIdColumnName".into(),
                    Value::String(inference_id_column.to_string()),
                );
                // A merge sets every column of its upload, a key a row lacks as null: rows
                // are merged in groups of the same keys, so that each row sets only its
                // own columns (a custom column on some rows, another on others).
                let (mut rows_sent, mut uploads) = (0u64, 0u32);
                let groups = groups_by_keys(rows);
                let groups: Vec<Cow<'_, [Value]>> = if groups.len() == 1 {
                    // The usual case: every row has the same keys, sent as they are.
                    vec![Cow::Borrowed(rows)]
                } else {
                    groups
                        .into_iter()
                        .map(|g| Cow::Owned(g.into_iter().map(|i| rows[i].clone()).collect()))
                        .collect()
                };
                for group in groups {
                    let result = self
                        .send_rows(
                            t,
                            pipeline_id,
                            &group,
                            data_config.clone(),
                            Some(inference_id_column),
                        )
                        .await;
                    match result {
                        Ok(n) => {
                            rows_sent += group.len() as u64;
                            uploads += n;
                        }
                        Err(e) if uploads == 0 => return Err(e),
                        Err(Error::BulkPartial {
                            rows_sent: r,
                            uploads: u,
                            source,
                        }) => {
                            return Err(Error::BulkPartial {
                                rows_sent: rows_sent + r,
                                uploads: uploads + u,
                                source,
                            });
                        }
                        Err(e) => {
                            return Err(Error::BulkPartial {
                                rows_sent,
                                uploads,
                                source: Box::new(e),
                            });
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// The indices of `rows` in groups of rows with the same keys, each group in the order of
/// its first row, its rows in their order.
fn groups_by_keys(rows: &[Value]) -> Vec<Vec<usize>> {
    let mut index: HashMap<Vec<&str>, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let mut keys: Vec<&str> = row
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        let g = *index.entry(keys).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
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
    /// A CSV file: strings as written, numbers and booleans as JSON writes them, nested
    /// values as JSON text, null as an empty cell. CSV carries no types: the platform
    /// reads each cell again, so an id such as `007` may be read as the number 7 (and
    /// `NA` or `null` as a missing value); prefer Arrow for such columns. The default
    /// only without the `arrow` feature.
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
    ) -> Result<u32, Error> {
        let merge = id_column.is_some();
        match self.inner.bulk_format {
            #[cfg(feature = "arrow")]
            BulkFormat::Arrow => {
                let target = self.bulk_target(t, pipeline_id, config, merge);
                super::arrow_upload::send_json_rows(&target, rows, id_column)
                    .await
                    .map(|summary| summary.uploads)
            }
            BulkFormat::Csv => {
                let objects = rows.iter().filter_map(Value::as_object);
                super::storage::upload_csv(
                    t,
                    self.inner.max_retries,
                    pipeline_id,
                    objects,
                    config,
                    merge,
                    self.inner.bulk_max_bytes,
                )
                .await
            }
        }
    }
}
