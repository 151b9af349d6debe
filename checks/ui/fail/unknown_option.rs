use openlayer_trace::trace;

#[trace(nmae = "retrieve")]
fn retrieve(query: &str) -> Vec<String> {
    vec![query.to_string()]
}

fn main() {}
