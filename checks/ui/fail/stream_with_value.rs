use openlayer_trace::trace;

#[trace(stream = true)]
fn tokens() -> Box<dyn Iterator<Item = String>> {
    Box::new(std::iter::empty())
}

fn main() {}
