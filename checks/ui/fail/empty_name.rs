use openlayer_trace::trace;

#[trace(name = "")]
fn answer(question: &str) -> String {
    question.to_string()
}

fn main() {}
