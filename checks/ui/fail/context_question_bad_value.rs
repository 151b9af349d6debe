use openlayer_trace::trace;

#[trace(context = "docs")]
fn a(docs: Vec<String>) -> usize {
    docs.len()
}

#[trace(question)]
fn b(question: &str) -> usize {
    question.len()
}

#[trace(question = question.trim())]
fn c(question: &str) -> usize {
    question.len()
}

fn main() {}
