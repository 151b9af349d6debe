use openlayer_trace::trace;

struct Client {
    endpoint: String,
}

#[trace]
fn complete(client: &Client, prompt: &str) -> String {
    format!("{}: {prompt}", client.endpoint)
}

fn main() {
    let client = Client { endpoint: "local".into() };
    let _ = complete(&client, "hi");
}
