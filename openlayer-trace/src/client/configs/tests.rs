use super::*;
use serde_json::json;

#[test]
fn llm_config_keys_are_camel_case_and_unset_ones_absent() {
    let c = LlmConfig::new("output")
        .input_variable_names(["q", "ctx"])
        .context_column_name("context")
        .cost_column_name("cost")
        .ground_truth_column_name("gt")
        .inference_id_column_name("id")
        .latency_column_name("latency")
        .metadata(json!({"model": "m"}).as_object().unwrap().clone())
        .num_of_token_column_name("tokens")
        .prompt(vec![PromptMessage::new("user", "{{ q }}")])
        .question_column_name("question")
        .session_id_column_name("session_id")
        .timestamp_column_name("ts")
        .user_id_column_name("user_id");
    assert_eq!(
        Value::Object(c.to_json()),
        json!({
            "outputColumnName": "output",
            "inputVariableNames": ["q", "ctx"],
            "contextColumnName": "context",
            "costColumnName": "cost",
            "groundTruthColumnName": "gt",
            "inferenceIdColumnName": "id",
            "latencyColumnName": "latency",
            "metadata": {"model": "m"},
            "numOfTokenColumnName": "tokens",
            "prompt": [{"role": "user", "content": "{{ q }}"}],
            "questionColumnName": "question",
            "sessionIdColumnName": "session_id",
            "timestampColumnName": "ts",
            "userIdColumnName": "user_id",
        })
    );
    assert_eq!(
        Value::Object(LlmConfig::new("o").to_json()),
        json!({"outputColumnName": "o"})
    );
}

#[test]
fn classification_and_regression_keys() {
    let c = TabularClassificationConfig::new(["a", "b"])
        .feature_names(["f1", "f2"])
        .categorical_feature_names(["f2"])
        .inference_id_column_name("id")
        .label_column_name("label")
        .latency_column_name("lat")
        .predictions_column_name("pred")
        .prediction_scores_column_name("scores")
        .timestamp_column_name("ts");
    assert_eq!(
        Value::Object(c.to_json()),
        json!({
            "classNames": ["a", "b"],
            "categoricalFeatureNames": ["f2"],
            "featureNames": ["f1", "f2"],
            "inferenceIdColumnName": "id",
            "labelColumnName": "label",
            "latencyColumnName": "lat",
            "predictionsColumnName": "pred",
            "predictionScoresColumnName": "scores",
            "timestampColumnName": "ts",
        })
    );
    let r = TabularRegressionConfig::new()
        .feature_names(["x"])
        .target_column_name("y")
        .predictions_column_name("yhat");
    assert_eq!(
        Value::Object(r.to_json()),
        json!({"featureNames": ["x"], "targetColumnName": "y", "predictionsColumnName": "yhat"})
    );
    let t = TextClassificationConfig::new(["neg", "pos"])
        .text_column_name("text")
        .label_column_name("label");
    assert_eq!(
        Value::Object(t.to_json()),
        json!({"classNames": ["neg", "pos"], "textColumnName": "text", "labelColumnName": "label"})
    );
}

#[test]
fn required_config_keys_are_checked() {
    let e = LlmConfig::new(" ").validate().unwrap_err().to_string();
    assert!(e.contains("outputColumnName"), "{e}");
    let e = TabularClassificationConfig::new(Vec::<String>::new())
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("classNames"), "{e}");
    let e = TextClassificationConfig::new(["a", "a"])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    let e = TabularRegressionConfig::new()
        .feature_names(["a"])
        .categorical_feature_names(["b"])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("categoricalFeatureNames") && e.contains("\"b\""),
        "{e}"
    );
}

#[test]
fn rows_are_checked_with_row_index_and_column() {
    let c = LlmConfig::new("output").input_variable_names(["question"]);
    let ok = [json!({"output": "a", "question": "q"})];
    validate_rows(&c, &ok).unwrap();
    let e = validate_rows(&c, &[ok[0].clone(), json!({"output": "b"})])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row 1") && e.contains("`question`") && e.contains("inputVariableNames"),
        "{e}"
    );
    let e = validate_rows(&c, &[json!(["output"])])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("row 0 must be a JSON object, got an array"),
        "{e}"
    );
    let t = TabularClassificationConfig::new(["a"])
        .feature_names(["f"])
        .predictions_column_name("p");
    let e = validate_rows(&t, &[json!({"f": 1})])
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 0 has no column `p`"), "{e}");
    // a raw config only checks the shape of the rows
    validate_rows(&RawStreamConfig::default(), &[json!({})]).unwrap();
    assert!(validate_rows(&RawStreamConfig::default(), &[json!(1)]).is_err());
}

#[test]
fn configs_are_read_from_json_by_task() {
    let c =
        stream_config_from_json(json!({"classNames": ["a"], "textColumnName": "t"}), None).unwrap();
    assert_eq!(c.task_type(), Some(TaskType::TextClassification));
    let c =
        stream_config_from_json(json!({"classNames": ["a"], "featureNames": ["f"]}), None).unwrap();
    assert_eq!(c.task_type(), Some(TaskType::TabularClassification));
    let c = stream_config_from_json(json!({"targetColumnName": "y"}), None).unwrap();
    assert_eq!(c.task_type(), Some(TaskType::TabularRegression));
    let c = stream_config_from_json(json!({}), Some(TaskType::TabularRegression)).unwrap();
    assert_eq!(c.task_type(), Some(TaskType::TabularRegression));
    let e = stream_config_from_json(json!({}), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("task type"), "{e}");
    let e = stream_config_from_json(json!({"classNames": []}), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("classNames"), "{e}");
    let e = stream_config_from_json(
        json!({"classNames": ["a"], "outputColumnName": "o"}),
        Some(TaskType::TextClassification),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("outputColumnName"), "{e}");
}

#[test]
fn row_update_config_round_trips() {
    let c = RowUpdateConfig::new()
        .ground_truth_column_name("gt")
        .human_feedback_column_name("hf")
        .inference_id_column_name("id")
        .latency_column_name("lat")
        .timestamp_column_name("ts");
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(
        v,
        json!({
            "groundTruthColumnName": "gt",
            "humanFeedbackColumnName": "hf",
            "inferenceIdColumnName": "id",
            "latencyColumnName": "lat",
            "timestampColumnName": "ts",
        })
    );
    assert_eq!(serde_json::from_value::<RowUpdateConfig>(v).unwrap(), c);
    assert!(RowUpdateConfig::new().is_empty());
    assert!(!c.is_empty());
    assert_eq!(c.row_columns().len(), 4);
}
