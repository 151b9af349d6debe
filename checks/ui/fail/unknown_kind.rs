use openlayer_trace::trace;

#[trace(kind = "llm")]
fn call_model(prompt: &str) -> String {
    prompt.to_string()
}

fn main() {}
