use openlayer_trace::trace;

#[trace(stream)]
fn tokens() -> std::vec::IntoIter<String> {
    vec!["a".to_string()].into_iter()
}

fn main() {}
