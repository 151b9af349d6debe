//! The explicit data APIs: row updates, streamed and bulk rows, projects and pipelines.

mod configs;
mod csv;
mod multipart;
mod types;

pub use configs::{
    LlmConfig, PromptMessage, RawStreamConfig, RowUpdateConfig, StreamConfig,
    TabularClassificationConfig, TabularRegressionConfig, TextClassificationConfig,
    stream_config_from_json,
};
pub use types::{InferencePipeline, Project, TaskType};
