use openlayer_trace::trace;

#[trace(skip_all, skip(secret))]
fn call(secret: &str, prompt: &str) -> String {
    let _ = secret;
    prompt.to_string()
}

fn main() {}
