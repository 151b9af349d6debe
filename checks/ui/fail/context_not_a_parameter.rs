use openlayer_trace::trace;

#[trace(context = documents)]
fn answer(question: &str, docs: Vec<String>) -> String {
    let _ = docs;
    question.to_string()
}

#[trace(question = query)]
fn ask(question: &str) -> String {
    question.to_string()
}

fn main() {}
