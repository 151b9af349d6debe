//! Typed configs: how the platform should read streamed rows, and row updates.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::types::TaskType;
use crate::error::Error;

/// Declares a config struct: its `required` fields as written (defaulting when absent
/// from JSON), then its `lists` (`Option<Vec<String>>` of column names) and `options`
/// (`Option<T>`), which are left out of the JSON while unset and get a builder-style
/// setter each, documented like the field. The struct's own attributes are passed through.
macro_rules! config_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            required { $($(#[$rdoc:meta])* $req:ident: $rty:ty,)* }
            lists { $($(#[$ldoc:meta])* $list:ident,)* }
            options { $($(#[$odoc:meta])* $opt:ident: $oty:ty,)* }
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$rdoc])*
                #[serde(default)]
                pub $req: $rty,
            )*
            $(
                $(#[$ldoc])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $list: Option<Vec<String>>,
            )*
            $(
                $(#[$odoc])*
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $opt: Option<$oty>,
            )*
        }

        impl $name {
            $(
                $(#[$ldoc])*
                pub fn $list<I, S>(mut self, names: I) -> Self
                where
                    I: IntoIterator<Item = S>,
                    S: Into<String>,
                {
                    self.$list = Some(names.into_iter().map(Into::into).collect());
                    self
                }
            )*
            $(
                $(#[$odoc])*
                pub fn $opt(mut self, value: impl Into<$oty>) -> Self {
                    self.$opt = Some(value.into());
                    self
                }
            )*
        }
    };
}

/// How the platform should read the rows of a [`Client::stream_rows`](crate::Client::stream_rows)
/// or [`Client::publish_batch`](crate::Client::publish_batch) call.
///
/// Implemented by [`LlmConfig`], [`TabularClassificationConfig`],
/// [`TabularRegressionConfig`], [`TextClassificationConfig`] and [`RawStreamConfig`];
/// [`stream_config_from_json`] reads any of them from JSON.
pub trait StreamConfig: fmt::Debug + Send + Sync {
    /// The config as sent to the platform (camelCase keys, unset keys omitted).
    fn to_json(&self) -> Map<String, Value>;

    /// Checks the config on its own: required keys present and non-empty.
    fn validate(&self) -> Result<(), Error> {
        Ok(())
    }

    /// The columns every row must have, each with the config key that names it.
    ///
    /// These are the columns the model consumed or produced. Columns that the platform
    /// fills in by default (inference id, timestamp) or that usually arrive later through
    /// a row update (ground truth, label, target) are not required.
    fn required_columns(&self) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    /// The task type this config is for, when it is known.
    fn task_type(&self) -> Option<TaskType> {
        None
    }
}

impl<C: StreamConfig + ?Sized> StreamConfig for Box<C> {
    fn to_json(&self) -> Map<String, Value> {
        (**self).to_json()
    }
    fn validate(&self) -> Result<(), Error> {
        (**self).validate()
    }
    fn required_columns(&self) -> Vec<(&'static str, &str)> {
        (**self).required_columns()
    }
    fn task_type(&self) -> Option<TaskType> {
        (**self).task_type()
    }
}

fn to_map<T: Serialize>(value: &T) -> Map<String, Value> {
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        // The configs are structs of strings, lists and JSON maps: they always encode
        // to an object.
        _ => Map::new(),
    }
}

fn non_empty(key: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        Err(Error::InvalidInput(format!(
            "config key `{key}` must not be empty"
        )))
    } else {
        Ok(())
    }
}

fn check_class_names(names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Err(Error::InvalidInput(
            "config key `classNames` is required and must list at least one class".into(),
        ));
    }
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n.as_str()) {
            return Err(Error::InvalidInput(format!(
                "config key `classNames` lists {n:?} twice"
            )));
        }
    }
    Ok(())
}

fn check_categorical(
    features: &Option<Vec<String>>,
    categorical: &Option<Vec<String>>,
) -> Result<(), Error> {
    let (Some(features), Some(categorical)) = (features, categorical) else {
        return Ok(());
    };
    for c in categorical {
        if !features.contains(c) {
            return Err(Error::InvalidInput(format!(
                "config key `categoricalFeatureNames` names {c:?}, which is not in `featureNames`"
            )));
        }
    }
    Ok(())
}

fn push_all<'a>(
    out: &mut Vec<(&'static str, &'a str)>,
    key: &'static str,
    names: &'a Option<Vec<String>>,
) {
    if let Some(names) = names {
        out.extend(names.iter().map(|n| (key, n.as_str())));
    }
}

fn push_one<'a>(
    out: &mut Vec<(&'static str, &'a str)>,
    key: &'static str,
    name: &'a Option<String>,
) {
    if let Some(n) = name {
        out.push((key, n.as_str()));
    }
}

/// One message of an LLM prompt template, in [`LlmConfig::prompt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text, with `{{ variable }}` placeholders.
    pub content: String,
}

impl PromptMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        PromptMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

config_struct! {
    /// The stream config of an LLM pipeline (`llm-base`).
    ///
    /// ```
    /// use openlayer_trace::{LlmConfig, StreamConfig};
    /// let config = LlmConfig::new("answer")
    ///     .input_variable_names(["question"])
    ///     .latency_column_name("latency_ms");
    /// assert_eq!(
    ///     serde_json::Value::Object(config.to_json()),
    ///     serde_json::json!({
    ///         "outputColumnName": "answer",
    ///         "inputVariableNames": ["question"],
    ///         "latencyColumnName": "latency_ms",
    ///     })
    /// );
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[non_exhaustive]
    pub struct LlmConfig {
        required {
            /// The column with the model's output (required).
            output_column_name: String,
        }
        lists {
            /// The columns with the prompt's input variables.
            input_variable_names,
        }
        options {
            /// The column with retrieved context (a list of strings).
            context_column_name: String,
            /// The column with the cost of the inference.
            cost_column_name: String,
            /// The column with the ground truth.
            ground_truth_column_name: String,
            /// The column with the inference id.
            inference_id_column_name: String,
            /// The column with the latency, in milliseconds.
            latency_column_name: String,
            /// Free-form metadata about the model.
            metadata: Map<String, Value>,
            /// The column with the number of tokens.
            num_of_token_column_name: String,
            /// The prompt template.
            prompt: Vec<PromptMessage>,
            /// The column with the question (for RAG metrics).
            question_column_name: String,
            /// The column with the session id.
            session_id_column_name: String,
            /// The column with the inference timestamp (Unix seconds).
            timestamp_column_name: String,
            /// The column with the user id.
            user_id_column_name: String,
        }
    }
}

impl LlmConfig {
    /// A config whose output is in `output_column_name`.
    pub fn new(output_column_name: impl Into<String>) -> Self {
        LlmConfig {
            output_column_name: output_column_name.into(),
            ..LlmConfig::default()
        }
    }
}

impl StreamConfig for LlmConfig {
    fn to_json(&self) -> Map<String, Value> {
        to_map(self)
    }
    fn validate(&self) -> Result<(), Error> {
        if self.output_column_name.trim().is_empty() {
            return Err(Error::InvalidInput(
                "config key `outputColumnName` is required for LLM rows".into(),
            ));
        }
        Ok(())
    }
    fn required_columns(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![("outputColumnName", self.output_column_name.as_str())];
        push_all(&mut out, "inputVariableNames", &self.input_variable_names);
        out
    }
    fn task_type(&self) -> Option<TaskType> {
        Some(TaskType::LlmBase)
    }
}

config_struct! {
    /// The stream config of a tabular classification pipeline.
    ///
    /// ```
    /// use openlayer_trace::{StreamConfig, TabularClassificationConfig};
    /// let config = TabularClassificationConfig::new(["no", "yes"])
    ///     .feature_names(["age", "plan"])
    ///     .categorical_feature_names(["plan"])
    ///     .predictions_column_name("prediction");
    /// assert!(config.validate().is_ok());
    /// assert_eq!(config.to_json()["classNames"], serde_json::json!(["no", "yes"]));
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[non_exhaustive]
    pub struct TabularClassificationConfig {
        required {
            /// The classes, in the order of the model's prediction indices (required).
            class_names: Vec<String>,
        }
        lists {
            /// The categorical features (a subset of `feature_names`).
            categorical_feature_names,
            /// The feature columns.
            feature_names,
        }
        options {
            /// The column with the inference id.
            inference_id_column_name: String,
            /// The column with the true label.
            label_column_name: String,
            /// The column with the latency, in milliseconds.
            latency_column_name: String,
            /// Free-form metadata about the model.
            metadata: Map<String, Value>,
            /// The column with the predicted class index.
            predictions_column_name: String,
            /// The column with the per-class scores (a list of numbers).
            prediction_scores_column_name: String,
            /// The column with the inference timestamp (Unix seconds).
            timestamp_column_name: String,
        }
    }
}

impl TabularClassificationConfig {
    /// A config with these classes.
    pub fn new<I, S>(class_names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TabularClassificationConfig {
            class_names: class_names.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

impl StreamConfig for TabularClassificationConfig {
    fn to_json(&self) -> Map<String, Value> {
        to_map(self)
    }
    fn validate(&self) -> Result<(), Error> {
        check_class_names(&self.class_names)?;
        check_categorical(&self.feature_names, &self.categorical_feature_names)
    }
    fn required_columns(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        push_all(&mut out, "featureNames", &self.feature_names);
        push_one(
            &mut out,
            "predictionsColumnName",
            &self.predictions_column_name,
        );
        push_one(
            &mut out,
            "predictionScoresColumnName",
            &self.prediction_scores_column_name,
        );
        out
    }
    fn task_type(&self) -> Option<TaskType> {
        Some(TaskType::TabularClassification)
    }
}

config_struct! {
    /// The stream config of a tabular regression pipeline.
    ///
    /// ```
    /// use openlayer_trace::{StreamConfig, TabularRegressionConfig};
    /// let config = TabularRegressionConfig::new()
    ///     .feature_names(["rooms", "area"])
    ///     .predictions_column_name("price_pred")
    ///     .target_column_name("price");
    /// assert_eq!(config.required_columns().len(), 3);
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[non_exhaustive]
    pub struct TabularRegressionConfig {
        required {}
        lists {
            /// The categorical features (a subset of `feature_names`).
            categorical_feature_names,
            /// The feature columns.
            feature_names,
        }
        options {
            /// The column with the inference id.
            inference_id_column_name: String,
            /// The column with the latency, in milliseconds.
            latency_column_name: String,
            /// Free-form metadata about the model.
            metadata: Map<String, Value>,
            /// The column with the predicted value.
            predictions_column_name: String,
            /// The column with the true value.
            target_column_name: String,
            /// The column with the inference timestamp (Unix seconds).
            timestamp_column_name: String,
        }
    }
}

impl TabularRegressionConfig {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StreamConfig for TabularRegressionConfig {
    fn to_json(&self) -> Map<String, Value> {
        to_map(self)
    }
    fn validate(&self) -> Result<(), Error> {
        check_categorical(&self.feature_names, &self.categorical_feature_names)
    }
    fn required_columns(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        push_all(&mut out, "featureNames", &self.feature_names);
        push_one(
            &mut out,
            "predictionsColumnName",
            &self.predictions_column_name,
        );
        out
    }
    fn task_type(&self) -> Option<TaskType> {
        Some(TaskType::TabularRegression)
    }
}

config_struct! {
    /// The stream config of a text classification pipeline.
    ///
    /// ```
    /// use openlayer_trace::{StreamConfig, TextClassificationConfig};
    /// let config = TextClassificationConfig::new(["negative", "positive"])
    ///     .text_column_name("review")
    ///     .predictions_column_name("sentiment");
    /// assert_eq!(
    ///     config.required_columns(),
    ///     [("predictionsColumnName", "sentiment"), ("textColumnName", "review")]
    /// );
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[non_exhaustive]
    pub struct TextClassificationConfig {
        required {
            /// The classes, in the order of the model's prediction indices (required).
            class_names: Vec<String>,
        }
        lists {}
        options {
            /// The column with the inference id.
            inference_id_column_name: String,
            /// The column with the true label.
            label_column_name: String,
            /// The column with the latency, in milliseconds.
            latency_column_name: String,
            /// Free-form metadata about the model.
            metadata: Map<String, Value>,
            /// The column with the predicted class index.
            predictions_column_name: String,
            /// The column with the per-class scores (a list of numbers).
            prediction_scores_column_name: String,
            /// The column with the text.
            text_column_name: String,
            /// The column with the inference timestamp (Unix seconds).
            timestamp_column_name: String,
        }
    }
}

impl TextClassificationConfig {
    /// A config with these classes.
    pub fn new<I, S>(class_names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TextClassificationConfig {
            class_names: class_names.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

impl StreamConfig for TextClassificationConfig {
    fn to_json(&self) -> Map<String, Value> {
        to_map(self)
    }
    fn validate(&self) -> Result<(), Error> {
        check_class_names(&self.class_names)
    }
    fn required_columns(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        push_one(
            &mut out,
            "predictionsColumnName",
            &self.predictions_column_name,
        );
        push_one(
            &mut out,
            "predictionScoresColumnName",
            &self.prediction_scores_column_name,
        );
        push_one(&mut out, "textColumnName", &self.text_column_name);
        out
    }
    fn task_type(&self) -> Option<TaskType> {
        Some(TaskType::TextClassification)
    }
}

/// A stream config sent as given, for keys this crate does not model (for example the
/// config the tracer writes for traces). Only the rows' shape is checked.
///
/// ```
/// use openlayer_trace::{RawStreamConfig, StreamConfig};
/// let config = RawStreamConfig::new(serde_json::json!({"outputColumnName": "output"})).unwrap();
/// assert_eq!(config.to_json()["outputColumnName"], "output");
/// assert!(RawStreamConfig::new(serde_json::json!([1])).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawStreamConfig(pub Map<String, Value>);

impl RawStreamConfig {
    /// Wraps a JSON object; anything else is `Error::InvalidInput`.
    pub fn new(config: Value) -> Result<Self, Error> {
        match config {
            Value::Object(map) => Ok(RawStreamConfig(map)),
            other => Err(Error::InvalidInput(format!(
                "a stream config must be a JSON object, got {}",
                json_kind(&other)
            ))),
        }
    }
}

impl StreamConfig for RawStreamConfig {
    fn to_json(&self) -> Map<String, Value> {
        self.0.clone()
    }
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads a stream config from JSON, as a typed config of `task_type`, or, when that is
/// `None`, of the task its keys point to: `outputColumnName` is LLM, `classNames` with
/// `textColumnName` text classification, `classNames` tabular classification, and
/// `targetColumnName` or `featureNames` tabular regression.
///
/// Unknown keys are errors (a misspelt key would otherwise be silently ignored), and the
/// config is validated. Use [`RawStreamConfig`] to send a config as it is.
///
/// ```
/// use openlayer_trace::{stream_config_from_json, StreamConfig, TaskType};
/// let c = stream_config_from_json(serde_json::json!({"outputColumnName": "out"}), None).unwrap();
/// assert_eq!(c.task_type(), Some(TaskType::LlmBase));
/// let e = stream_config_from_json(serde_json::json!({"outputColumName": "out"}), None).unwrap_err();
/// assert!(e.to_string().contains("outputColumName"));
/// ```
pub fn stream_config_from_json(
    config: Value,
    task_type: Option<TaskType>,
) -> Result<Box<dyn StreamConfig>, Error> {
    let Value::Object(map) = config else {
        return Err(Error::InvalidInput(format!(
            "a stream config must be a JSON object, got {}",
            json_kind(&config)
        )));
    };
    let task = match task_type {
        Some(t) => t,
        None => {
            if map.contains_key("outputColumnName") {
                TaskType::LlmBase
            } else if map.contains_key("classNames") && map.contains_key("textColumnName") {
                TaskType::TextClassification
            } else if map.contains_key("classNames") {
                TaskType::TabularClassification
            } else if map.contains_key("targetColumnName") || map.contains_key("featureNames") {
                TaskType::TabularRegression
            } else {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err(Error::InvalidInput(format!(
                    "cannot tell the task type of the stream config: it has none of \
                     `outputColumnName` (LLM), `classNames` (classification), \
                     `targetColumnName` or `featureNames` (regression), only [{}]; \
                     name the task type",
                    keys.join(", ")
                )));
            }
        }
    };
    fn parse<C>(map: Map<String, Value>, what: &str) -> Result<Box<dyn StreamConfig>, Error>
    where
        C: StreamConfig + serde::de::DeserializeOwned + 'static,
    {
        let c: C = serde_json::from_value(Value::Object(map))
            .map_err(|e| Error::InvalidInput(format!("bad {what} stream config: {e}")))?;
        c.validate()?;
        Ok(Box::new(c))
    }
    match task {
        TaskType::LlmBase => parse::<LlmConfig>(map, "LLM"),
        TaskType::TabularClassification => {
            parse::<TabularClassificationConfig>(map, "tabular classification")
        }
        TaskType::TabularRegression => parse::<TabularRegressionConfig>(map, "tabular regression"),
        TaskType::TextClassification => {
            parse::<TextClassificationConfig>(map, "text classification")
        }
        other => Err(Error::InvalidInput(format!(
            "no typed stream config for task type `{other}`"
        ))),
    }
}

/// Checks `rows` against `config`: the config is valid, every row is a JSON object, and
/// every row has every required column. Errors name the row index and the column.
pub(crate) fn validate_rows<C: StreamConfig + ?Sized>(
    config: &C,
    rows: &[Value],
) -> Result<(), Error> {
    config.validate()?;
    let required = config.required_columns();
    for (key, column) in &required {
        non_empty(key, column)?;
    }
    for (i, row) in rows.iter().enumerate() {
        check_row(i, row, &required)?;
    }
    Ok(())
}

/// Checks row `i`: a JSON object with every `required` column (each with the config key
/// that names it). Returns the row's object.
pub(crate) fn check_row<'a>(
    i: usize,
    row: &'a Value,
    required: &[(&str, &str)],
) -> Result<&'a Map<String, Value>, Error> {
    let Value::Object(map) = row else {
        return Err(Error::InvalidInput(format!(
            "row {i} must be a JSON object, got {}",
            json_kind(row)
        )));
    };
    for (key, column) in required {
        if !map.contains_key(*column) {
            return Err(Error::InvalidInput(format!(
                "row {i} has no column `{column}` (named by `{key}`)"
            )));
        }
    }
    Ok(map)
}

config_struct! {
    /// Which columns of a row update hold what, for [`Client::update_row`](crate::Client::update_row)
    /// and [`Client::update_batch`](crate::Client::update_batch). Only the names that are set are sent.
    ///
    /// ```
    /// use openlayer_trace::RowUpdateConfig;
    /// let config = RowUpdateConfig::new()
    ///     .ground_truth_column_name("groundTruth")
    ///     .human_feedback_column_name("humanFeedback");
    /// assert_eq!(
    ///     serde_json::to_string(&config).unwrap(),
    ///     r#"{"groundTruthColumnName":"groundTruth","humanFeedbackColumnName":"humanFeedback"}"#
    /// );
    /// ```
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    pub struct RowUpdateConfig {
        required {}
        lists {}
        options {
            /// The column with the ground truth.
            ground_truth_column_name: String,
            /// The column with human feedback (thumbs, ratings, ...).
            human_feedback_column_name: String,
            /// The column with the inference id.
            inference_id_column_name: String,
            /// The column with the latency, in milliseconds.
            latency_column_name: String,
            /// The column with the inference timestamp (Unix seconds).
            timestamp_column_name: String,
        }
    }
}

impl RowUpdateConfig {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no column name is set (such a config is not sent).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The config as a JSON object (camelCase keys, unset keys omitted).
    pub fn to_json(&self) -> Map<String, Value> {
        to_map(self)
    }

    /// The columns that a row must hold: those named for ground truth, human feedback,
    /// latency and timestamp (the inference id travels outside the row).
    pub(crate) fn row_columns(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        push_one(
            &mut out,
            "groundTruthColumnName",
            &self.ground_truth_column_name,
        );
        push_one(
            &mut out,
            "humanFeedbackColumnName",
            &self.human_feedback_column_name,
        );
        push_one(&mut out, "latencyColumnName", &self.latency_column_name);
        push_one(&mut out, "timestampColumnName", &self.timestamp_column_name);
        out
    }
}

/// Checks a row update before anything is sent: a non-empty inference id, a row that is a
/// JSON object, and every column `config` names (other than the inference id column)
/// present in the row. Returns the row's object.
pub(crate) fn check_row_update<'a>(
    inference_id: &str,
    row: &'a Value,
    config: Option<&RowUpdateConfig>,
) -> Result<&'a Map<String, Value>, Error> {
    require_id("inference id", inference_id)?;
    let Value::Object(map) = row else {
        return Err(Error::InvalidInput(format!(
            "the row must be a JSON object, got {}",
            json_kind(row)
        )));
    };
    if let Some(c) = config {
        for (key, column) in c.row_columns() {
            if !map.contains_key(column) {
                return Err(Error::InvalidInput(format!(
                    "the row has no column `{column}` (named by `{key}`)"
                )));
            }
        }
    }
    Ok(map)
}

pub(crate) fn require_id(what: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        Err(Error::InvalidInput(format!("the {what} must not be empty")))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
