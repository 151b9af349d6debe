//! Projects, inference pipelines and task types, as the platform describes them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::Error;

/// What a project's model does.
///
/// ```
/// use openlayer_trace::TaskType;
/// assert_eq!(TaskType::LlmBase.as_str(), "llm-base");
/// assert_eq!("tabular-regression".parse::<TaskType>().unwrap(), TaskType::TabularRegression);
/// // task types this crate does not know yet are kept as they are
/// assert_eq!("llm-agent".parse::<TaskType>().unwrap(), TaskType::Other("llm-agent".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TaskType {
    /// `llm-base`: LLM and RAG applications, agents, chat.
    LlmBase,
    /// `tabular-classification`.
    TabularClassification,
    /// `tabular-regression`.
    TabularRegression,
    /// `text-classification`.
    TextClassification,
    /// A task type this crate does not know; sent and received as it is.
    Other(String),
}

impl TaskType {
    /// The task type as the platform spells it.
    pub fn as_str(&self) -> &str {
        match self {
            TaskType::LlmBase => "llm-base",
            TaskType::TabularClassification => "tabular-classification",
            TaskType::TabularRegression => "tabular-regression",
            TaskType::TextClassification => "text-classification",
            TaskType::Other(s) => s,
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskType {
    type Err = Error;

    /// Parses a task type; unknown non-empty names become [`TaskType::Other`].
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s.trim() {
            "llm-base" => TaskType::LlmBase,
            "tabular-classification" => TaskType::TabularClassification,
            "tabular-regression" => TaskType::TabularRegression,
            "text-classification" => TaskType::TextClassification,
            "" => return Err(Error::InvalidInput("empty task type".into())),
            other => TaskType::Other(other.to_string()),
        })
    }
}

impl Serialize for TaskType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Openlayer project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Project {
    /// The project id.
    pub id: String,
    /// The project name.
    pub name: String,
    /// The project's task type.
    #[serde(default)]
    pub task_type: Option<TaskType>,
    /// The project's description.
    #[serde(default)]
    pub description: Option<String>,
    /// Every other field of the platform's answer.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An inference pipeline: where a deployed model's rows go. Addressed by [`id`](Self::id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct InferencePipeline {
    /// The pipeline id, used by every data call.
    pub id: String,
    /// The pipeline name.
    pub name: String,
    /// The id of the project the pipeline belongs to.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The pipeline's description.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether this pipeline exists only locally: a client without an API key derives
    /// its id from the project and pipeline names and writes data to the local file.
    #[serde(skip)]
    pub local: bool,
    /// Every other field of the platform's answer.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl InferencePipeline {
    /// The pipeline with `project_id` filled in when the platform left it out.
    pub(crate) fn in_project(mut self, project_id: &str) -> Self {
        self.project_id
            .get_or_insert_with(|| project_id.to_string());
        self
    }
}

/// A page of a list answer, `{"items": [...], "_meta": {...}}`; other fields are ignored.
#[derive(Deserialize)]
pub(crate) struct Items<T> {
    pub items: Vec<T>,
    /// The platform's paging, when the answer has it.
    #[serde(rename = "_meta", default)]
    pub meta: Option<PageMeta>,
}

/// `_meta` of a list answer: `{"page", "perPage", "totalItems", "totalPages"}`. Each field
/// is optional here, so that an answer with only some of them still pages.
#[derive(Deserialize, Default, Clone, Copy, Debug)]
pub(crate) struct PageMeta {
    /// The number of items a full page holds, which may be fewer than were asked for (a
    /// server capping `perPage`).
    #[serde(rename = "perPage", default)]
    pub per_page: Option<u64>,
    /// How many pages the list has.
    #[serde(rename = "totalPages", default)]
    pub total_pages: Option<u64>,
    /// How many items the list has.
    #[serde(rename = "totalItems", default)]
    pub total_items: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_kept_and_missing_optional_ones_tolerated() {
        let p: Project = serde_json::from_value(json!({
            "id": "p1", "name": "Chat", "taskType": "llm-base", "dateCreated": "2025-01-01",
        }))
        .unwrap();
        assert_eq!(p.task_type, Some(TaskType::LlmBase));
        assert_eq!(p.description, None);
        assert_eq!(p.extra["dateCreated"], "2025-01-01");
        let i: InferencePipeline =
            serde_json::from_value(json!({"id": "i1", "name": "prod", "status": "ok"})).unwrap();
        assert_eq!(i.project_id, None);
        assert!(!i.local);
        assert_eq!(i.extra["status"], "ok");
    }

    #[test]
    fn task_types_round_trip() {
        for t in [
            TaskType::LlmBase,
            TaskType::TabularClassification,
            TaskType::TabularRegression,
            TaskType::TextClassification,
            TaskType::Other("x-y".into()),
        ] {
            let v = serde_json::to_value(&t).unwrap();
            assert_eq!(v, json!(t.as_str()));
            assert_eq!(serde_json::from_value::<TaskType>(v).unwrap(), t);
        }
        assert!("".parse::<TaskType>().is_err());
    }
}
