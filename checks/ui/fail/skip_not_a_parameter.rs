use openlayer_trace::trace;

#[trace(skip(api_key, clinet))]
fn call(api_key: &str, client: u8, prompt: &str) -> String {
    let _ = (api_key, client);
    prompt.to_string()
}

struct Model;

impl Model {
    #[trace(skip(self))]
    fn name(&self) -> String {
        "model".to_string()
    }
}

fn main() {}
