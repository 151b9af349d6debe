//! Bulk uploads as Arrow IPC streams, as the official SDK sends them: each upload is one
//! stream of record batches (at most [`CHUNK_ROWS`] rows each) under one schema, posted
//! to a presigned URL, then registered with `POST /inference-pipelines/{id}/data`.
//!
//! Input arrives as an iterator of batches and leaves as uploads of a bounded size, so a
//! table larger than memory goes through in several uploads.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Date32Type, Date64Type, Float16Type, Float32Type, Float64Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, TimeUnit};
use serde_json::{Map, Value};

use super::arrow_json::{RowSchema, check_json_type, json_value};
use super::configs::{self, RowUpdateConfig, StreamConfig};
use super::storage::{self, PresignedUrl};
use super::{Backend, Client, multipart, require_id};
use crate::error::Error;
use crate::transport::Transport;

/// Most rows in one record batch of an upload (the official SDK's chunk size).
pub(crate) const CHUNK_ROWS: usize = 16_384;

/// The media type of the uploaded file.
const CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

/// What a bulk call sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkSummary {
    /// Rows registered with the pipeline (in local mode: written to the local file).
    pub rows: u64,
    /// Uploads registered, each with its own `/data` call (0 in local mode).
    pub uploads: u32,
    /// Bytes of Arrow IPC uploaded, multipart framing excluded.
    pub bytes: u64,
}

/// An item of the iterator given to [`Client::publish_record_batches`] and
/// [`Client::update_record_batches`]: a batch, or the error of the reader producing it
/// (which stops the call: nothing more is sent).
pub trait IntoRecordBatch {
    /// The batch, or why there is none.
    fn into_record_batch(self) -> Result<RecordBatch, Error>;
}

impl IntoRecordBatch for RecordBatch {
    fn into_record_batch(self) -> Result<RecordBatch, Error> {
        Ok(self)
    }
}

impl IntoRecordBatch for &RecordBatch {
    fn into_record_batch(self) -> Result<RecordBatch, Error> {
        Ok(self.clone())
    }
}

impl IntoRecordBatch for Result<RecordBatch, Error> {
    fn into_record_batch(self) -> Result<RecordBatch, Error> {
        self
    }
}

impl IntoRecordBatch for Result<RecordBatch, ArrowError> {
    fn into_record_batch(self) -> Result<RecordBatch, Error> {
        self.map_err(|e| Error::InvalidInput(format!("reading the record batches failed: {e}")))
    }
}

/// Where a bulk call goes.
pub(super) struct Target<'a> {
    t: &'a Transport,
    max_retries: u32,
    pipeline_id: &'a str,
    config: Map<String, Value>,
    merge: bool,
    max_bytes: usize,
}

/// What every batch must hold.
struct Check<'a> {
    /// The inference id column (a merge): present, non-null, non-empty; made text.
    id_column: Option<&'a str>,
    /// Columns that must be present, each with the config key naming it.
    required: Vec<(&'static str, &'a str)>,
}

impl Client {
    pub(super) fn bulk_target<'a>(
        &self,
        t: &'a Transport,
        pipeline_id: &'a str,
        config: Map<String, Value>,
        merge: bool,
    ) -> Target<'a> {
        Target {
            t,
            max_retries: self.inner.max_retries,
            pipeline_id,
            config,
            merge,
            max_bytes: self.inner.bulk_max_bytes,
        }
    }

    /// Publishes (appends) the rows of Arrow record batches: what Polars, DataFusion,
    /// DuckDB and the `arrow`/`parquet` crates produce. Uploads Arrow IPC streams of at
    /// most [`ClientBuilder::bulk_max_bytes`](super::ClientBuilder::bulk_max_bytes) each
    /// (plus one chunk), each registered with `POST .../data` and
    /// `performDataMerge: false`, so the input never has to be in memory at once. A
    /// registration is not sent again after a server error or a lost answer (the platform
    /// may have appended the rows already, and would append them twice): the error is
    /// returned, and that upload's rows may or may not be in the platform (after earlier
    /// uploads, the error is [`Error::BulkPartial`], below).
    ///
    /// Columns are uploaded as they are typed, except: timestamps and dates become Unix
    /// seconds (`Int64` for seconds and dates, `Float64` for finer units); lists, structs
    /// and maps become JSON text; string views and dictionaries of strings become
    /// `Utf8`. Batches whose schemas differ go in separate uploads.
    ///
    /// The config is checked first, and each batch before it is sent: every column the
    /// config requires must be there ([`Error::InvalidInput`] naming it). The iterator is
    /// read on the calling task. When a batch fails after earlier uploads were
    /// registered, the error is [`Error::BulkPartial`], which says how many rows are in.
    /// In local mode, the rows go to the local file as data-stream lines.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use openlayer_trace::arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    /// use openlayer_trace::{Client, TabularRegressionConfig};
    /// # async fn run() -> Result<(), openlayer_trace::Error> {
    /// let batch = RecordBatch::try_from_iter([
    ///     ("id", Arc::new(StringArray::from(vec!["r1", "r2"])) as ArrayRef),
    ///     ("prediction", Arc::new(Float64Array::from(vec![0.3, 0.9])) as ArrayRef),
    /// ])
    /// .unwrap();
    /// let config = TabularRegressionConfig::new()
    ///     .predictions_column_name("prediction")
    ///     .inference_id_column_name("id");
    /// let sent = Client::from_env()?
    ///     .publish_record_batches("YOUR_PIPELINE_ID", &config, [batch])
    ///     .await?;
    /// assert_eq!(sent.rows, 2);
    /// # Ok(()) }
    /// ```
    pub async fn publish_record_batches<C, I>(
        &self,
        pipeline_id: &str,
        config: &C,
        batches: I,
    ) -> Result<BulkSummary, Error>
    where
        C: StreamConfig + ?Sized,
        I: IntoIterator,
        I::Item: IntoRecordBatch,
    {
        self.check_pipeline_id(pipeline_id)?;
        configs::validate_rows(config, &[])?;
        let check = Check {
            id_column: None,
            required: config.required_columns(),
        };
        let batches = batches.into_iter().map(IntoRecordBatch::into_record_batch);
        match &self.inner.backend {
            Backend::Local(_) => {
                let mut summary = BulkSummary::default();
                // One call: its batches may rotate the file once, not twice.
                let mut op = crate::export::local_file::Appends::default();
                for batch in batches {
                    let appended = async {
                        let rows = local_rows(&batch?, &check, summary.rows)?;
                        self.publish_rows(pipeline_id, config, &rows, &mut op)
                            .await?;
                        Ok::<_, Error>(rows.len() as u64)
                    };
                    summary.rows += appended.await.map_err(|e| partly_local(&summary, e))?;
                }
                Ok(summary)
            }
            Backend::Remote(t) => {
                let target = self.bulk_target(t, pipeline_id, config.to_json(), false);
                send_batches(&target, batches, &check).await
            }
        }
    }

    /// Updates rows by inference id from Arrow record batches: the batches' columns are
    /// merged into the rows whose ids are in `inference_id_column`, through uploads as in
    /// [`publish_record_batches`](Self::publish_record_batches), registered with
    /// `performDataMerge: true` and a config of `config` plus `inferenceIdColumnName`.
    ///
    /// The id column must be a string or integer column (integers are sent as text) with
    /// no null or empty id, and the columns `config` names must be there: the first
    /// batch that breaks this fails the call with [`Error::InvalidInput`] naming the row
    /// (counted from 0 over all batches) before that batch is sent. In local mode, each
    /// row is appended to the local file as a row-update line.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use openlayer_trace::arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    /// use openlayer_trace::{Client, RowUpdateConfig};
    /// # async fn run() -> Result<(), openlayer_trace::Error> {
    /// let batch = RecordBatch::try_from_iter([
    ///     ("inference_id", Arc::new(StringArray::from(vec!["d56d2b2c", "3b0b2521"])) as ArrayRef),
    ///     ("label", Arc::new(Int64Array::from(vec![0, 1])) as ArrayRef),
    /// ])
    /// .unwrap();
    /// let config = RowUpdateConfig::new().ground_truth_column_name("label");
    /// Client::from_env()?
    ///     .update_record_batches("YOUR_PIPELINE_ID", "inference_id", Some(config), [batch])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn update_record_batches<I>(
        &self,
        pipeline_id: &str,
        inference_id_column: &str,
        config: Option<RowUpdateConfig>,
        batches: I,
    ) -> Result<BulkSummary, Error>
    where
        I: IntoIterator,
        I::Item: IntoRecordBatch,
    {
        self.check_pipeline_id(pipeline_id)?;
        require_id("inference id column", inference_id_column)?;
        let config = config.unwrap_or_default();
        let check = Check {
            id_column: Some(inference_id_column),
            required: config.row_columns(),
        };
        let batches = batches.into_iter().map(IntoRecordBatch::into_record_batch);
        match &self.inner.backend {
            Backend::Local(_) => {
                let mut summary = BulkSummary::default();
                // One call: its batches may rotate the file once, not twice.
                let mut op = crate::export::local_file::Appends::default();
                for batch in batches {
                    let appended = async {
                        let rows = local_rows(&batch?, &check, summary.rows)?;
                        self.update_rows(
                            pipeline_id,
                            inference_id_column,
                            Some(config.clone()),
                            &rows,
                            &mut op,
                        )
                        .await?;
                        Ok::<_, Error>(rows.len() as u64)
                    };
                    summary.rows += appended.await.map_err(|e| partly_local(&summary, e))?;
                }
                Ok(summary)
            }
            Backend::Remote(t) => {
                let mut data_config = config.to_json();
                data_config.insert(
                    "inferenceIdColumnName".into(),
                    Value::String(inference_id_column.to_string()),
                );
                let target = self.bulk_target(t, pipeline_id, data_config, true);
                send_batches(&target, batches, &check).await
            }
        }
    }
}

/// A batch checked and prepared as for an upload, as JSON rows for the local file. A null
/// is an explicit `null`, as in the Arrow upload (a row update that sets the column to
/// null, and a column the config names is present).
fn local_rows(batch: &RecordBatch, check: &Check<'_>, first_row: u64) -> Result<Vec<Value>, Error> {
    if batch.num_rows() == 0 {
        prepare(batch, check, first_row)?;
        return Ok(Vec::new());
    }
    // A chunk at a time, as uploads are (see `upload`); the whole batch's rows are made
    // before any is written.
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut offset = 0;
    while offset < batch.num_rows() {
        let len = CHUNK_ROWS.min(batch.num_rows() - offset);
        let chunk = prepare(&batch.slice(offset, len), check, first_row + offset as u64)?;
        offset += len;
        let schema = chunk.schema();
        rows.extend(
            super::record_batch_to_rows(&chunk)?
                .into_iter()
                .map(|mut row| {
                    for field in schema.fields() {
                        row.entry(field.name().clone()).or_insert(Value::Null);
                    }
                    Value::Object(row)
                }),
        );
    }
    Ok(rows)
}

/// Uploads JSON rows (already checked) as Arrow: one schema for all of them, the id
/// column (if any) as text.
pub(super) async fn send_json_rows(
    target: &Target<'_>,
    rows: &[Value],
    id_column: Option<&str>,
) -> Result<BulkSummary, Error> {
    let mut schema = match id_column {
        Some(id) => RowSchema::new().text_column(id),
        None => RowSchema::new(),
    };
    let objects: Vec<&Map<String, Value>> = rows.iter().filter_map(Value::as_object).collect();
    for row in &objects {
        schema.observe(row);
    }
    let batches = objects
        .chunks(CHUNK_ROWS)
        .enumerate()
        .map(|(i, chunk)| schema.to_record_batch(chunk.iter().copied(), i * CHUNK_ROWS));
    let check = Check {
        id_column,
        required: Vec::new(),
    };
    send_batches(target, batches, &check).await
}

/// One upload being written: the multipart body so far, with the IPC stream inside.
struct Open {
    presigned: PresignedUrl,
    name: String,
    boundary: String,
    head_len: usize,
    writer: StreamWriter<Vec<u8>>,
    fields: Fields,
    rows: u64,
}

/// The most an upload's body reserves before it is written.
const RESERVE_MAX: usize = 64 << 20;

impl Open {
    async fn start(target: &Target<'_>, schema: &Schema) -> Result<Open, Error> {
        let name = storage::object_name(target.pipeline_id, "arrow");
        let presigned = storage::presign(target.t, &name).await?;
        let boundary = loop {
            let b = multipart::random_boundary();
            if multipart::fits(&b, &presigned.fields.0) {
                break b;
            }
        };
        // The capacity is reserved, not touched: pages count only once written. At most
        // `RESERVE_MAX` up front: a `bulk_max_bytes` meant as "never split" is a bound,
        // not an allocation (the body grows past it as it must).
        let reserve = target.max_bytes.saturating_add(target.max_bytes / 4);
        let mut body = Vec::with_capacity(reserve.min(RESERVE_MAX));
        multipart::write_head(
            &mut body,
            &boundary,
            &presigned.fields.0,
            &name,
            CONTENT_TYPE,
        );
        let head_len = body.len();
        let writer = StreamWriter::try_new(body, schema).map_err(arrow_error)?;
        Ok(Open {
            presigned,
            name,
            boundary,
            head_len,
            writer,
            fields: schema.fields().clone(),
            rows: 0,
        })
    }

    fn file_len(&self) -> usize {
        self.writer.get_ref().len() - self.head_len
    }

    /// Ends the stream, uploads it and registers it.
    async fn send(mut self, target: &Target<'_>, summary: &mut BulkSummary) -> Result<(), Error> {
        self.writer.finish().map_err(arrow_error)?;
        let mut body = self.writer.into_inner().map_err(arrow_error)?;
        let file_len = body.len() - self.head_len;
        let mut boundary = self.boundary;
        if multipart::contains(&body[self.head_len..], boundary.as_bytes()) {
            // Never seen in practice (128 random bits); rebuild the frame if it happens.
            let file = body.split_off(self.head_len);
            boundary = loop {
                let b = multipart::random_boundary();
                if !multipart::contains(&file, b.as_bytes())
                    && multipart::fits(&b, &self.presigned.fields.0)
                {
                    break b;
                }
            };
            body.clear();
            let fields = &self.presigned.fields.0;
            multipart::write_head(&mut body, &boundary, fields, &self.name, CONTENT_TYPE);
            body.extend_from_slice(&file);
        }
        multipart::write_tail(&mut body, &boundary);
        tracing::debug!(
            target: "openlayer_trace",
            rows = self.rows,
            bytes = file_len,
            object = %self.name,
            merge = target.merge,
            "bulk upload (Arrow IPC)"
        );
        let content_type = format!("multipart/form-data; boundary={boundary}");
        storage::upload(
            target.t,
            target.max_retries,
            &self.presigned,
            &content_type,
            body.into(),
        )
        .await?;
        storage::register(
            target.t,
            target.pipeline_id,
            &self.presigned.storage_uri,
            target.merge,
            &target.config,
            self.rows,
        )
        .await?;
        summary.rows += self.rows;
        summary.uploads += 1;
        summary.bytes += file_len as u64;
        Ok(())
    }
}

fn arrow_error(e: ArrowError) -> Error {
    Error::InvalidInput(format!("cannot encode the Arrow IPC stream: {e}"))
}

/// Sends `batches` in uploads of at most `target.max_bytes` (plus one chunk).
async fn send_batches(
    target: &Target<'_>,
    batches: impl Iterator<Item = Result<RecordBatch, Error>>,
    check: &Check<'_>,
) -> Result<BulkSummary, Error> {
    let mut summary = BulkSummary::default();
    let partial = |summary: &BulkSummary, e: Error| {
        if summary.uploads == 0 {
            e
        } else {
            Error::BulkPartial {
                rows_sent: summary.rows,
                uploads: summary.uploads,
                source: Box::new(e),
            }
        }
    };
    let mut open: Option<Open> = None;
    let mut seen: u64 = 0;
    for batch in batches {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return Err(partial(&summary, e)),
        };
        if batch.num_rows() == 0 {
            // Checked all the same (its columns), though it has no row to upload.
            if let Err(e) = prepare(&batch, check, seen) {
                return Err(partial(&summary, e));
            }
        }
        // The whole batch's ids first: a bad one fails the call before any chunk of its
        // batch is sent.
        if let Some(id) = check.id_column
            && let Ok(i) = batch.schema().index_of(id)
            && let Err(e) = id_column(id, batch.column(i).as_ref(), seen)
        {
            return Err(partial(&summary, e));
        }
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = CHUNK_ROWS.min(batch.num_rows() - offset);
            // Converted a chunk at a time, not the whole batch: a converted text column is
            // a `Utf8` array, whose offsets are 32-bit, and a batch of more than 2 GiB of
            // text (a Polars frame of `Utf8View` strings) would overflow them.
            let chunk = match prepare(&batch.slice(offset, len), check, seen + offset as u64) {
                Ok(c) => c,
                Err(e) => return Err(partial(&summary, e)),
            };
            offset += len;
            if open
                .as_ref()
                .is_some_and(|o| o.fields != *chunk.schema().fields())
            {
                let done = open.take().expect("checked above");
                if let Err(e) = done.send(target, &mut summary).await {
                    return Err(partial(&summary, e));
                }
            }
            let upload = match &mut open {
                Some(o) => o,
                None => match Open::start(target, &chunk.schema()).await {
                    Ok(o) => open.insert(o),
                    Err(e) => return Err(partial(&summary, e)),
                },
            };
            if let Err(e) = upload.writer.write(&chunk) {
                return Err(partial(&summary, arrow_error(e)));
            }
            upload.rows += len as u64;
            if upload.file_len() >= target.max_bytes {
                let done = open.take().expect("just written");
                if let Err(e) = done.send(target, &mut summary).await {
                    return Err(partial(&summary, e));
                }
            }
        }
        seen += batch.num_rows() as u64;
    }
    if let Some(done) = open
        && let Err(e) = done.send(target, &mut summary).await
    {
        return Err(partial(&summary, e));
    }
    Ok(summary)
}

/// Checks `batch` (its first row is row `first_row` of the input) and converts its
/// columns to the types uploaded.
fn prepare(batch: &RecordBatch, check: &Check<'_>, first_row: u64) -> Result<RecordBatch, Error> {
    let schema = batch.schema();
    for (key, column) in &check.required {
        if schema.index_of(column).is_err() {
            return Err(Error::InvalidInput(format!(
                "the batch starting at row {first_row} has no column `{column}` (named by `{key}`)"
            )));
        }
    }
    if let Some(id) = check.id_column
        && schema.index_of(id).is_err()
    {
        return Err(Error::InvalidInput(format!(
            "the batch starting at row {first_row} has no column `{id}` (the inference id column)"
        )));
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let converted = if Some(field.name().as_str()) == check.id_column {
            Some(id_column(field.name(), column.as_ref(), first_row)?)
        } else {
            convert(field.name(), column.as_ref())?
        };
        match converted {
            Some(array) => {
                fields.push(Field::new(field.name(), array.data_type().clone(), true));
                columns.push(array);
            }
            None => {
                // Nullable, as converted columns are: a schema that changes with whether a
                // batch happens to hold a null would close the upload at each change.
                fields.push(
                    field
                        .as_ref()
                        .clone()
                        .with_metadata(Default::default())
                        .with_nullable(true),
                );
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::InvalidInput(format!("cannot prepare the batch: {e}")))
}

/// The inference ids as text; a null or empty id fails, naming its row.
fn id_column(name: &str, array: &dyn Array, first_row: u64) -> Result<ArrayRef, Error> {
    let bad_row = |i: usize, what: &str| {
        Error::InvalidInput(format!(
            "row {}: {what} in `{name}` (the inference id column)",
            first_row + i as u64
        ))
    };
    let integer = matches!(
        array.data_type(),
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    );
    let text = match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => {
            matches!(
                **v,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        }
        _ => false,
    };
    if !integer && !text {
        return Err(Error::InvalidInput(format!(
            "the inference id column `{name}` has type {}; ids must be strings or integers",
            array.data_type()
        )));
    }
    // The logical nulls: a dictionary's null value behind a valid key is null too.
    let nulls = array.logical_nulls();
    if let Some(i) = (0..array.len()).find(|&i| nulls.as_ref().is_some_and(|n| n.is_null(i))) {
        return Err(bad_row(i, "no inference id (null)"));
    }
    if array.data_type() == &DataType::Utf8 {
        let strings = array.as_string::<i32>();
        if let Some(i) = (0..array.len()).find(|&i| strings.value(i).trim().is_empty()) {
            return Err(bad_row(i, "an empty inference id"));
        }
        return Ok(Arc::new(strings.clone()));
    }
    let mut b = StringBuilder::with_capacity(array.len(), array.len() * 16);
    for i in 0..array.len() {
        let id = match json_value(array, i) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if id.trim().is_empty() {
            return Err(bad_row(i, "an empty inference id"));
        }
        b.append_value(id);
    }
    Ok(Arc::new(b.finish()))
}

/// A local-mode failure after earlier batches were appended to the local file: the rows
/// already written are said (as [`Error::BulkPartial`] says a remote call's), so that a
/// rerun does not write them twice.
fn partly_local(summary: &BulkSummary, e: Error) -> Error {
    if summary.rows == 0 {
        return e;
    }
    Error::BulkPartial {
        rows_sent: summary.rows,
        uploads: 0,
        source: Box::new(e),
    }
}

/// The column as uploaded, when it is not uploaded as it is.
fn convert(name: &str, array: &dyn Array) -> Result<Option<ArrayRef>, Error> {
    let seconds = |f: &dyn Fn(usize) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter(
            (0..array.len()).map(|i| (!array.is_null(i)).then(|| f(i))),
        ))
    };
    let fraction = |f: &dyn Fn(usize) -> i64, per_second: f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter(
            (0..array.len()).map(|i| (!array.is_null(i)).then(|| f(i) as f64 / per_second)),
        ))
    };
    let out: ArrayRef = match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            let a = array.as_primitive::<TimestampSecondType>();
            seconds(&|i| a.value(i))
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            let a = array.as_primitive::<TimestampMillisecondType>();
            fraction(&|i| a.value(i), 1e3)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let a = array.as_primitive::<TimestampMicrosecondType>();
            fraction(&|i| a.value(i), 1e6)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            let a = array.as_primitive::<TimestampNanosecondType>();
            fraction(&|i| a.value(i), 1e9)
        }
        DataType::Date32 => {
            let a = array.as_primitive::<Date32Type>();
            seconds(&|i| i64::from(a.value(i)) * 86_400)
        }
        DataType::Date64 => {
            let a = array.as_primitive::<Date64Type>();
            seconds(&|i| a.value(i).div_euclid(1000))
        }
        // NaN and infinities are not numbers the platform can aggregate (and JSON has
        // none): null, as the local file and the official SDK have them.
        DataType::Float16 => return Ok(finite::<Float16Type>(array, |v| v.is_finite())),
        DataType::Float32 => return Ok(finite::<Float32Type>(array, f32::is_finite)),
        DataType::Float64 => return Ok(finite::<Float64Type>(array, f64::is_finite)),
        DataType::Utf8View => Arc::new(StringArray::from_iter(array.as_string_view().iter())),
        DataType::Dictionary(_, v)
            if matches!(
                **v,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            text_of(array, |v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
        }
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(_, _)
        | DataType::Struct(_)
        | DataType::Map(_, _) => {
            check_json_type(name, array.data_type())?;
            text_of(array, |v| v.to_string())
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// A float column with its non-finite values made null, when it has any (else `None`: it
/// is uploaded as it is).
fn finite<T: ArrowPrimitiveType>(
    array: &dyn Array,
    is_finite: impl Fn(T::Native) -> bool,
) -> Option<ArrayRef> {
    let a = array.as_primitive::<T>();
    if a.iter().flatten().all(&is_finite) {
        return None;
    }
    let kept: arrow_array::PrimitiveArray<T> =
        a.iter().map(|v| v.filter(|v| is_finite(*v))).collect();
    Some(Arc::new(kept))
}

/// A `Utf8` column of `text(value)` for each non-null value.
fn text_of(array: &dyn Array, text: impl Fn(Value) -> String) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(array.len(), array.len() * 32);
    for i in 0..array.len() {
        match json_value(array, i) {
            Value::Null => b.append_null(),
            v => b.append_value(text(v)),
        }
    }
    Arc::new(b.finish())
}

#[cfg(test)]
mod tests;
