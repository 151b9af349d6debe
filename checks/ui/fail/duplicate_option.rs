use openlayer_trace::trace;

#[trace(name = "first", kind = "tool", name = "second")]
fn lookup(key: &str) -> String {
    key.to_string()
}

fn main() {}
