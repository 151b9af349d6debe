//! The explicit data APIs: row updates, streamed and bulk rows, projects and pipelines.
//!
//! [`Client`] talks to the platform when it has an API key. Without one it runs on the
//! embedded default: data calls append to the local trace file
//! ([`Config::trace_file`]) for `openlayer push` to send later, and calls that must read
//! from the platform return [`Error::Config`].
//!
//! It owns the explicit data API and its request builders and uploads. It may import from
//! `util/`, `error.rs`, `config.rs`, `encode/`, `export/` and `transport/`.

#[cfg(feature = "arrow")]
mod arrow_json;
#[cfg(feature = "arrow")]
mod arrow_upload;
mod builder;
mod bulk;
mod configs;
mod csv;
mod list;
mod multipart;
mod storage;
mod types;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::Method;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::Error;
use crate::export::local_file::{self as localfile, LocalLine};
pub(crate) use crate::transport::segment;
use crate::transport::{ApiRequest, ApiResponse, Transport, TransportConfig};

#[cfg(feature = "arrow")]
pub use arrow_array;
#[cfg(feature = "arrow")]
pub use arrow_json::{RowSchema, record_batch_to_rows};
#[cfg(feature = "arrow")]
pub use arrow_schema;
#[cfg(feature = "arrow")]
pub use arrow_upload::{BulkSummary, IntoRecordBatch};
pub use builder::ClientBuilder;
pub use bulk::BulkFormat;
pub(crate) use configs::check_row_update;
use configs::require_id;
pub use configs::{
    LlmConfig, PromptMessage, RawStreamConfig, RowUpdateConfig, StreamConfig,
    TabularClassificationConfig, TabularRegressionConfig, TextClassificationConfig,
    stream_config_from_json,
};
use list::List;
pub use types::{InferencePipeline, Project, TaskType};

/// A client of the Openlayer data APIs. Cheap to clone; clones share one connection pool.
///
/// ```no_run
/// use openlayer_trace::{Client, RowUpdateConfig};
/// # async fn run() -> Result<(), openlayer_trace::Error> {
/// let client = Client::from_env()?;
/// client
///     .update_row(
///         "YOUR_PIPELINE_ID",
///         "chat_conv123_user456",
///         &serde_json::json!({"groundTruth": "Paris", "user_converted": true}),
///         Some(RowUpdateConfig::new().ground_truth_column_name("groundTruth")),
///     )
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    default_pipeline_id: Option<String>,
    batch_max_rows: usize,
    max_retries: u32,
    /// The bound of the local file (local mode).
    trace_file_max_bytes: u64,
    bulk_format: BulkFormat,
    #[cfg_attr(not(feature = "arrow"), allow(dead_code))]
    bulk_max_bytes: usize,
}

enum Backend {
    Remote(Transport),
    Local(PathBuf),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Client");
        match &self.inner.backend {
            Backend::Remote(t) => d.field("base_url", &t.base_url()),
            Backend::Local(p) => d.field("local_file", p),
        };
        d.field("inference_pipeline_id", &self.inner.default_pipeline_id)
            .finish()
    }
}

impl Client {
    /// How many items the list calls ask for per page (`perPage`).
    pub const LIST_PER_PAGE: u32 = 100;

    /// The most pages a list call reads before it gives up on a list that does not end
    /// (100 000 items at [`LIST_PER_PAGE`](Self::LIST_PER_PAGE)).
    pub const LIST_MAX_PAGES: u32 = 1000;

    /// A client configured from the environment (`OPENLAYER_API_KEY`,
    /// `OPENLAYER_BASE_URL`, `OPENLAYER_INFERENCE_PIPELINE_ID`, `OPENLAYER_TRACE_FILE`, ...).
    ///
    /// Without `OPENLAYER_API_KEY`, local mode must be asked for: with
    /// `OPENLAYER_TRACE_FILE` set the client writes to that file, else this is an
    /// [`Error::Config`] (never a silent fallback to a local file).
    pub fn from_env() -> Result<Client, Error> {
        Client::new(&Config::from_env()?)
    }

    /// A client with this configuration. Only the connection settings, the API key, the
    /// default pipeline, the trace file and `batch_max_rows` are used: in particular
    /// `OPENLAYER_DISABLE_PUBLISH`, which turns tracing off, does not silence the
    /// client's explicit calls.
    ///
    /// Without an API key, the client runs in local mode only when the configuration
    /// names its file ([`ConfigBuilder::trace_file`](crate::ConfigBuilder::trace_file),
    /// [`ClientBuilder::trace_file`] or `OPENLAYER_TRACE_FILE`); otherwise this is an
    /// [`Error::Config`].
    pub fn new(config: &Config) -> Result<Client, Error> {
        Client::with_bulk(config, BulkFormat::default(), Client::BULK_MAX_BYTES)
    }

    /// The default of [`ClientBuilder::bulk_max_bytes`]: 64 MiB.
    pub const BULK_MAX_BYTES: usize = 64 << 20;

    fn with_bulk(
        config: &Config,
        bulk_format: BulkFormat,
        bulk_max_bytes: usize,
    ) -> Result<Client, Error> {
        let backend = if config.api_key().is_some() {
            Backend::Remote(Transport::new(TransportConfig::from_config(config))?)
        } else if config.trace_file_set {
            Backend::Local(config.trace_file().to_path_buf())
        } else {
            return Err(Error::Config(
                "no API key (OPENLAYER_API_KEY): set one, or ask for local mode by naming \
                 the local file (OPENLAYER_TRACE_FILE, or trace_file on the builder)"
                    .into(),
            ));
        };
        Ok(Client {
            inner: Arc::new(Inner {
                backend,
                default_pipeline_id: config.inference_pipeline_id().map(str::to_string),
                batch_max_rows: config.batch_max_rows,
                max_retries: config.max_retries,
                trace_file_max_bytes: config.trace_file_max_bytes,
                bulk_format,
                bulk_max_bytes: bulk_max_bytes.max(1),
            }),
        })
    }

    /// A builder starting from the environment; explicit values beat it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use openlayer_trace::Client;
    /// let client = Client::builder()
    ///     .api_key("sk-test")
    ///     .base_url("http://127.0.0.1:9/v1")
    ///     .request_timeout(Duration::from_secs(10))
    ///     .max_retries(4)
    ///     .build()
    ///     .unwrap();
    /// assert!(!client.is_local());
    /// ```
    pub fn builder() -> ClientBuilder {
        // Checked in `build`, after the explicit settings: a bad value in the
        // environment that an explicit one replaces is no error (and an OTLP endpoint,
        // which the client does not use, is not checked at all).
        ClientBuilder::new(Config::env_defaults())
    }

    /// Whether the client runs in local mode (no API key): data goes to the local file.
    pub fn is_local(&self) -> bool {
        matches!(self.inner.backend, Backend::Local(_))
    }

    /// The local trace file, in local mode.
    pub fn local_file(&self) -> Option<&Path> {
        match &self.inner.backend {
            Backend::Local(p) => Some(p),
            Backend::Remote(_) => None,
        }
    }

    /// The default inference pipeline id of the configuration
    /// (`OPENLAYER_INFERENCE_PIPELINE_ID`), if any.
    pub fn inference_pipeline_id(&self) -> Option<&str> {
        self.inner.default_pipeline_id.as_deref()
    }

    // ---- row updates -------------------------------------------------------------

    /// Updates the row with `inference_id`: sets the columns of `row` (a JSON object),
    /// with `config` telling which of them hold the ground truth, human feedback, ...
    ///
    /// Sends `PUT /inference-pipelines/{pipeline_id}/rows?inferenceId={inference_id}` with
    /// `{"row": ..., "config": ...}` (`config` omitted when `None` or empty). In local
    /// mode, appends a row-update line to the local file instead.
    ///
    /// Fails with [`Error::InvalidInput`] before sending anything when an id is empty,
    /// `row` is not an object, or a column named by `config` (other than the inference
    /// id column) is missing from `row`.
    pub async fn update_row(
        &self,
        pipeline_id: &str,
        inference_id: &str,
        row: &Value,
        config: Option<RowUpdateConfig>,
    ) -> Result<(), Error> {
        self.check_pipeline_id(pipeline_id)?;
        let config = config.filter(|c| !c.is_empty());
        let map = check_row_update(inference_id, row, config.as_ref())?;
        self.send_row_update(pipeline_id, inference_id, map, config.map(|c| c.to_json()))
            .await
    }

    /// Updates the row with `inference_id` as [`update_row`](Self::update_row) does, with
    /// `config` sent as given: keys [`RowUpdateConfig`] does not model are kept (a
    /// row-update line of a local trace file holds its config so; `openlayer push` sends
    /// it with this). The keys it models are checked as `update_row` checks them; a key
    /// set to `null` is left out (as an unset one), and a `config` left empty is not sent.
    ///
    /// Fails with [`Error::InvalidInput`] before sending anything when `update_row` would,
    /// or when a key `RowUpdateConfig` models has a value of another type than it takes.
    pub async fn update_row_raw(
        &self,
        pipeline_id: &str,
        inference_id: &str,
        row: &Value,
        config: Option<&Map<String, Value>>,
    ) -> Result<(), Error> {
        self.check_pipeline_id(pipeline_id)?;
        let config: Option<Map<String, Value>> = config
            .map(|c| {
                c.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Map<String, Value>>()
            })
            .filter(|c| !c.is_empty());
        let config = config.as_ref();
        let known = config
            .map(|c| serde_json::from_value::<RowUpdateConfig>(Value::Object(c.clone())))
            .transpose()
            .map_err(|e| Error::InvalidInput(format!("bad row-update config: {e}")))?;
        let map = check_row_update(inference_id, row, known.as_ref())?;
        self.send_row_update(pipeline_id, inference_id, map, config.cloned())
            .await
    }

    /// Sends a checked row update (or, in local mode, appends its line).
    async fn send_row_update(
        &self,
        pipeline_id: &str,
        inference_id: &str,
        map: &Map<String, Value>,
        config: Option<Map<String, Value>>,
    ) -> Result<(), Error> {
        match &self.inner.backend {
            Backend::Local(path) => localfile::append(
                path,
                &[LocalLine::RowUpdate {
                    pipeline_id: non_empty(pipeline_id),
                    inference_id: inference_id.to_string(),
                    row: map.clone(),
                    config,
                }],
                self.inner.trace_file_max_bytes,
            ),
            Backend::Remote(t) => {
                #[derive(Serialize)]
                struct Body<'a> {
                    row: &'a Map<String, Value>,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    config: Option<Map<String, Value>>,
                }
                let body = Body { row: map, config };
                let req = ApiRequest {
                    method: Method::PUT,
                    path: format!("/inference-pipelines/{}/rows", segment(pipeline_id)),
                    query: vec![("inferenceId".into(), inference_id.into())],
                    body: Some(serde_json::to_vec(&body)?.into()),
                };
                expect_success(t, &req).await
            }
        }
    }

    /// Reads back the row with `inference_id` (`GET .../rows/{inferenceId}`), as the
    /// platform returns it. Needs an API key.
    pub async fn get_row(&self, pipeline_id: &str, inference_id: &str) -> Result<Value, Error> {
        let t = self.remote("get_row")?;
        require_id("pipeline id", pipeline_id)?;
        require_id("inference id", inference_id)?;
        let req = ApiRequest {
            method: Method::GET,
            path: row_path(pipeline_id, inference_id),
            query: Vec::new(),
            body: None,
        };
        send(t, &req).await?.json()
    }

    /// Deletes the row with `inference_id` (`DELETE .../rows/{inferenceId}`). Needs an
    /// API key. A 404 on a retry after an attempt the platform may have carried out (its
    /// answer lost: a 5xx, a timeout, a connection lost after the request was sent)
    /// counts as deleted; any other 404 is an error.
    pub async fn delete_row(&self, pipeline_id: &str, inference_id: &str) -> Result<(), Error> {
        let t = self.remote("delete_row")?;
        require_id("pipeline id", pipeline_id)?;
        require_id("inference id", inference_id)?;
        let req = ApiRequest {
            method: Method::DELETE,
            path: row_path(pipeline_id, inference_id),
            query: Vec::new(),
            body: None,
        };
        let outcome = t.send(&req, None).await;
        match outcome.result {
            Err(Error::Api { status: 404, .. }) if outcome.maybe_acted => Ok(()),
            r => r.map(drop),
        }
    }

    // ---- streamed rows -------------------------------------------------------------

    /// Streams `rows` (JSON objects) to the pipeline in one request,
    /// `POST /inference-pipelines/{pipeline_id}/data-stream` with
    /// `{"config": ..., "rows": [...]}`. In local mode, appends one data-stream line to
    /// the local file instead.
    ///
    /// The config and every row are checked first ([`Error::InvalidInput`] naming the
    /// row index and the column; nothing is sent then). For many rows, send several
    /// calls or use [`publish_batch`](Self::publish_batch).
    ///
    /// Delivery is at least once: a request that timed out or was answered with a server
    /// error may have been stored, and is sent again (up to `max_retries` times), so its
    /// rows can arrive twice. Give rows an `inferenceId` to recognise them;
    /// [`publish_batch`](Self::publish_batch)'s appends are never registered twice.
    ///
    /// ```no_run
    /// use openlayer_trace::{Client, LlmConfig};
    /// # async fn run() -> Result<(), openlayer_trace::Error> {
    /// let client = Client::from_env()?;
    /// let config = LlmConfig::new("answer").input_variable_names(["question"]);
    /// let rows = [serde_json::json!({"question": "2+2?", "answer": "4", "inferenceId": "q-1"})];
    /// client.stream_rows("YOUR_PIPELINE_ID", &config, &rows).await?;
    /// # Ok(()) }
    /// ```
    pub async fn stream_rows<C: StreamConfig + ?Sized>(
        &self,
        pipeline_id: &str,
        config: &C,
        rows: &[Value],
    ) -> Result<(), Error> {
        let Some(config) = self.prepare_rows(pipeline_id, config, rows)? else {
            return Ok(());
        };
        match &self.inner.backend {
            Backend::Local(path) => localfile::append(
                path,
                &[stream_line(pipeline_id, config, rows.iter())],
                self.inner.trace_file_max_bytes,
            ),
            Backend::Remote(t) => {
                #[derive(Serialize)]
                struct Body<'a> {
                    config: Map<String, Value>,
                    rows: &'a [Value],
                }
                let req = ApiRequest {
                    method: Method::POST,
                    path: format!("/inference-pipelines/{}/data-stream", segment(pipeline_id)),
                    query: Vec::new(),
                    body: Some(serde_json::to_vec(&Body { config, rows })?.into()),
                };
                expect_success(t, &req).await
            }
        }
    }

    // ---- projects and pipelines ----------------------------------------------------

    /// Lists every project (`GET /projects`), only those matching `name` when given.
    /// Needs an API key.
    ///
    /// Reads page after page (`page=1, 2, ...` with `perPage=`[`LIST_PER_PAGE`](Self::LIST_PER_PAGE))
    /// up to the last one: the page numbered `_meta.totalPages` of the platform's answer
    /// (else a page shorter than its `_meta.perPage`, a server holding fewer items per page
    /// than were asked for; else `_meta.totalItems` items), or an empty page. An answer without `_meta` ends at the first page
    /// with fewer items than asked for. A server that still has not ended the list after
    /// [`LIST_MAX_PAGES`](Self::LIST_MAX_PAGES) pages, or that answers a full page twice
    /// in a row, is an [`Error::Api`]; nothing is returned then.
    /// [`list_projects_page`](Self::list_projects_page) reads one page.
    pub async fn list_projects(&self, name: Option<&str>) -> Result<Vec<Project>, Error> {
        let t = self.remote("list_projects")?;
        List::projects(name)
            .all(t, Self::LIST_PER_PAGE, Self::LIST_MAX_PAGES)
            .await
    }

    /// One page of [`list_projects`](Self::list_projects): page `page` (from 1) of
    /// `per_page` projects. A page past the end is empty. The platform may hold fewer
    /// than `per_page` projects per page, so a short page is not always the last one
    /// ([`list_projects`](Self::list_projects) reads the answer's `_meta` to know).
    /// Needs an API key.
    pub async fn list_projects_page(
        &self,
        name: Option<&str>,
        page: u32,
        per_page: u32,
    ) -> Result<Vec<Project>, Error> {
        let t = self.remote("list_projects_page")?;
        List::projects(name).page(t, page, per_page).await
    }

    /// Creates a project (`POST /projects`). Needs an API key.
    ///
    /// Tried again only when the platform cannot have acted on the request (a refused
    /// connection, a 429): after a timeout or a 5xx the project may exist, and a retry
    /// could make a second one. [`load_or_create_inference_pipeline`] looks for it before
    /// it tries again.
    ///
    /// [`load_or_create_inference_pipeline`]: Self::load_or_create_inference_pipeline
    pub async fn create_project(
        &self,
        name: &str,
        task_type: TaskType,
        description: Option<&str>,
    ) -> Result<Project, Error> {
        let t = self.remote("create_project")?;
        require_id("project name", name)?;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            name: &'a str,
            task_type: &'a TaskType,
            description: Option<&'a str>,
        }
        let body = Body {
            name,
            task_type: &task_type,
            description,
        };
        let req = ApiRequest {
            method: Method::POST,
            path: "/projects".into(),
            query: Vec::new(),
            body: Some(serde_json::to_vec(&body)?.into()),
        };
        send_unrepeatable(t, &req).await?.json()
    }

    /// Lists every inference pipeline of a project
    /// (`GET /projects/{project_id}/inference-pipelines`), only those matching `name` when
    /// given. Needs an API key.
    ///
    /// Pages are read as in [`list_projects`](Self::list_projects);
    /// [`list_inference_pipelines_page`](Self::list_inference_pipelines_page) reads one.
    pub async fn list_inference_pipelines(
        &self,
        project_id: &str,
        name: Option<&str>,
    ) -> Result<Vec<InferencePipeline>, Error> {
        let t = self.remote("list_inference_pipelines")?;
        let items = List::pipelines(project_id, name)?
            .all(t, Self::LIST_PER_PAGE, Self::LIST_MAX_PAGES)
            .await?;
        Ok(in_project(items, project_id))
    }

    /// One page of [`list_inference_pipelines`](Self::list_inference_pipelines): page
    /// `page` (from 1) of `per_page` pipelines. A page past the end is empty; as with
    /// [`list_projects_page`](Self::list_projects_page), a short page is not always the
    /// last one. Needs an API key.
    pub async fn list_inference_pipelines_page(
        &self,
        project_id: &str,
        name: Option<&str>,
        page: u32,
        per_page: u32,
    ) -> Result<Vec<InferencePipeline>, Error> {
        let t = self.remote("list_inference_pipelines_page")?;
        let items = List::pipelines(project_id, name)?
            .page(t, page, per_page)
            .await?;
        Ok(in_project(items, project_id))
    }

    /// Creates an inference pipeline in a project
    /// (`POST /projects/{project_id}/inference-pipelines`). Needs an API key.
    ///
    /// Retried as [`create_project`](Self::create_project) is: only when the platform
    /// cannot have acted on the request.
    pub async fn create_inference_pipeline(
        &self,
        project_id: &str,
        name: &str,
        description: Option<&str>,
    ) -> Result<InferencePipeline, Error> {
        let t = self.remote("create_inference_pipeline")?;
        require_id("project id", project_id)?;
        require_id("pipeline name", name)?;
        #[derive(Serialize)]
        struct Body<'a> {
            name: &'a str,
            description: Option<&'a str>,
        }
        let req = ApiRequest {
            method: Method::POST,
            path: format!("/projects/{}/inference-pipelines", segment(project_id)),
            query: Vec::new(),
            body: Some(serde_json::to_vec(&Body { name, description })?.into()),
        };
        let p: InferencePipeline = send_unrepeatable(t, &req).await?.json()?;
        Ok(p.in_project(project_id))
    }

    /// The pipeline `pipeline_name` of the project `project_name`, creating either when it
    /// does not exist (names match exactly; a new project gets `task_type`).
    ///
    /// In local mode nothing is asked of the platform: the pipeline gets a deterministic
    /// local id (a UUID v5 of the two names), [`InferencePipeline::local`] is set, and an
    /// info line says so.
    ///
    /// ```
    /// use openlayer_trace::{Client, Config, TaskType};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// // No API key: local mode, asked for by naming the file.
    /// let config = Config::builder().trace_file("openlayer-traces.jsonl").build().unwrap();
    /// let client = Client::new(&config).unwrap();
    /// let a = client
    ///     .load_or_create_inference_pipeline("Chatbot", "production", TaskType::LlmBase)
    ///     .await
    ///     .unwrap();
    /// let b = client
    ///     .load_or_create_inference_pipeline("Chatbot", "production", TaskType::LlmBase)
    ///     .await
    ///     .unwrap();
    /// assert!(a.local);
    /// assert_eq!(a.id, b.id);
    /// # });
    /// ```
    pub async fn load_or_create_inference_pipeline(
        &self,
        project_name: &str,
        pipeline_name: &str,
        task_type: TaskType,
    ) -> Result<InferencePipeline, Error> {
        require_id("project name", project_name)?;
        require_id("pipeline name", pipeline_name)?;
        if let Backend::Local(path) = &self.inner.backend {
            let id = local_pipeline_id(project_name, pipeline_name);
            tracing::info!(
                target: "openlayer_trace",
                project = project_name,
                pipeline = pipeline_name,
                pipeline_id = %id,
                file = %path.display(),
                "no API key: using a local inference pipeline id; data goes to the local file"
            );
            return Ok(InferencePipeline {
                id,
                name: pipeline_name.to_string(),
                project_id: None,
                description: None,
                local: true,
                extra: Map::new(),
            });
        }
        let project = load_or_create(
            self,
            || async {
                Ok(self
                    .list_projects(Some(project_name))
                    .await?
                    .into_iter()
                    .find(|p| p.name == project_name))
            },
            || {
                tracing::info!(target: "openlayer_trace", project = project_name, "creating project");
                self.create_project(project_name, task_type.clone(), None)
            },
        )
        .await?;
        let project_id = project.id.as_str();
        load_or_create(
            self,
            || async {
                Ok(self
                    .list_inference_pipelines(project_id, Some(pipeline_name))
                    .await?
                    .into_iter()
                    .find(|p| p.name == pipeline_name))
            },
            || {
                tracing::info!(
                    target: "openlayer_trace",
                    project = project_name,
                    pipeline = pipeline_name,
                    "creating inference pipeline"
                );
                self.create_inference_pipeline(project_id, pipeline_name, None)
            },
        )
        .await
    }

    /// Checks the pipeline id of a call that writes data: it must not be empty, except in
    /// local mode, where a line without one is kept for `openlayer push --pipeline-id`.
    fn check_pipeline_id(&self, pipeline_id: &str) -> Result<(), Error> {
        if self.is_local() {
            Ok(())
        } else {
            require_id("pipeline id", pipeline_id)
        }
    }

    /// Checks a call that sends `rows` with `config`, before anything is sent: the
    /// pipeline id, the config and every row. Returns the config as sent, or `None` when
    /// there are no rows and so nothing to send.
    fn prepare_rows<C: StreamConfig + ?Sized>(
        &self,
        pipeline_id: &str,
        config: &C,
        rows: &[Value],
    ) -> Result<Option<Map<String, Value>>, Error> {
        self.check_pipeline_id(pipeline_id)?;
        configs::validate_rows(config, rows)?;
        Ok((!rows.is_empty()).then(|| config.to_json()))
    }

    fn remote(&self, what: &str) -> Result<&Transport, Error> {
        match &self.inner.backend {
            Backend::Remote(t) => Ok(t),
            Backend::Local(_) => Err(Error::Config(format!(
                "{what} reads from the platform and requires OPENLAYER_API_KEY \
                 (the client is in local mode)"
            ))),
        }
    }
}

/// The local id of a pipeline: a UUID v5 of the project and pipeline names, under a
/// namespace of this crate's own, so it is the same in every process.
pub(crate) fn local_pipeline_id(project_name: &str, pipeline_name: &str) -> String {
    let namespace = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://github.com/openlayer-ai/openlayer-trace#local-pipeline",
    );
    // The NUL separator keeps ("a/b", "c") and ("a", "b/c") apart.
    let name = format!("{project_name}\u{0}{pipeline_name}");
    uuid::Uuid::new_v5(&namespace, name.as_bytes()).to_string()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.to_string())
}

fn in_project(items: Vec<InferencePipeline>, project_id: &str) -> Vec<InferencePipeline> {
    items
        .into_iter()
        .map(|p| p.in_project(project_id))
        .collect()
}

fn stream_line<'a>(
    pipeline_id: &str,
    config: Map<String, Value>,
    rows: impl Iterator<Item = &'a Value>,
) -> LocalLine {
    LocalLine::Stream {
        pipeline_id: non_empty(pipeline_id),
        config,
        rows: rows.filter_map(|r| r.as_object().cloned()).collect(),
    }
}

fn row_path(pipeline_id: &str, inference_id: &str) -> String {
    format!(
        "/inference-pipelines/{}/rows/{}",
        segment(pipeline_id),
        segment(inference_id)
    )
}

/// `METHOD /path?query`, as errors name a request (the query encoded as the transport
/// sends it).
fn describe(req: &ApiRequest) -> String {
    if req.query.is_empty() {
        return format!("{} {}", req.method, req.path);
    }
    let mut url = reqwest::Url::parse("http://localhost/").expect("a valid URL");
    url.query_pairs_mut().extend_pairs(&req.query);
    format!("{} {}?{}", req.method, req.path, url.query().unwrap_or(""))
}

/// What `find` finds, else what `create` makes. A creation that fails where the platform
/// may have acted on it (a timeout, a 5xx, a 409 from someone creating it at the same
/// time) is followed by another look, and by another creation only when the thing is
/// still missing, up to `max_retries` times. A lost answer makes a second one only if the
/// platform does not list the first by the time of the next look (the look waits the
/// retry backoff first).
async fn load_or_create<T, Find, FindFut, Create, CreateFut>(
    client: &Client,
    find: Find,
    create: Create,
) -> Result<T, Error>
where
    Find: Fn() -> FindFut,
    FindFut: Future<Output = Result<Option<T>, Error>>,
    Create: Fn() -> CreateFut,
    CreateFut: Future<Output = Result<T, Error>>,
{
    let t = client.remote("load_or_create_inference_pipeline")?;
    let mut retries = 0;
    loop {
        if let Some(found) = find().await? {
            return Ok(found);
        }
        let error = match create().await {
            Ok(made) => return Ok(made),
            Err(e) => e,
        };
        let uncertain = match &error {
            Error::Transport { .. } => true,
            Error::Api { status, .. } => crate::transport::is_retryable_status(*status),
            _ => false,
        };
        if !uncertain {
            return Err(error);
        }
        let asked = match &error {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        };
        if asked.is_some_and(|w| w > crate::transport::MAX_RETRY_AFTER) {
            // The server asked for a longer wait than a call waits: not sooner.
            return find().await?.ok_or(error);
        }
        if retries >= t.max_retries() {
            // One last look: the creation may have gone through after all.
            return find().await?.ok_or(error);
        }
        tracing::debug!(
            target: "openlayer_trace",
            error = %error,
            "creation failed; looking again before another try"
        );
        tokio::time::sleep(t.backoff(retries, asked)).await;
        retries += 1;
    }
}

async fn send(t: &Transport, req: &ApiRequest) -> Result<ApiResponse, Error> {
    let outcome = t.send(req, None).await;
    if outcome.retries > 0 {
        tracing::debug!(
            target: "openlayer_trace",
            request = %describe(req),
            retries = outcome.retries,
            "request retried"
        );
    }
    outcome.result
}

/// [`send`] for a request that a repeat would carry out twice (a creation).
async fn send_unrepeatable(t: &Transport, req: &ApiRequest) -> Result<ApiResponse, Error> {
    t.send_unrepeatable(req).await.result
}

/// Sends `req` and checks the answer of a write: a 2xx whose body, when it is JSON with
/// `success: false`, is an error all the same.
async fn expect_success(t: &Transport, req: &ApiRequest) -> Result<(), Error> {
    check_success(t, req, send(t, req).await?)
}

/// The answer `resp` to the write `req`: an error when its body is JSON with
/// `success: false`.
pub(super) fn check_success(
    t: &Transport,
    req: &ApiRequest,
    resp: ApiResponse,
) -> Result<(), Error> {
    if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&resp.body)
        && body.get("success") == Some(&Value::Bool(false))
    {
        // As an error answer's message: without the API key, and cut.
        let message = t.server_text(
            ["error", "message"]
                .iter()
                .find_map(|k| body.get(*k).and_then(Value::as_str))
                .unwrap_or("the platform answered success: false"),
        );
        return Err(Error::Api {
            status: resp.status,
            message,
            request: describe(req),
            retry_after: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
