use openlayer_trace::trace;

#[trace(kind = chat_completion)]
fn call_model(prompt: &str) -> String {
    prompt.to_string()
}

fn main() {}
