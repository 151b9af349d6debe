use openlayer_trace::{testing, trace, update_current_trace};

#[trace]
fn embed_query(user_query: &str) -> Vec<f64> {
    let _ = user_query;
    vec![0.1, 0.2, 0.3]
}

#[trace]
fn retrieve_context(user_query: &str) -> Vec<String> {
    embed_query(user_query);
    vec![
        "Paris is the capital of France.".into(),
        "France is in Europe.".into(),
    ]
}

#[trace]
fn main_fn(user_query: &str) -> String {
    update_current_trace!(inference_id = "abc", user_id = "u1");
    let ctx = retrieve_context(user_query);
    format!("Paris ({} docs)", ctx.len())
}

#[test]
fn smoke() {
    let (out, traces) = testing::capture(|| main_fn("What is the capital of France?"));
    assert_eq!(out, "Paris (2 docs)");
    assert_eq!(traces.len(), 1);
    println!("{}", traces[0].config_json());
    println!("{}", traces[0].row_json());
}
