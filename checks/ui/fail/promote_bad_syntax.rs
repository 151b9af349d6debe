use openlayer_trace::trace;

#[trace(promote = "user_query")]
fn a(user_query: &str) -> usize {
    user_query.len()
}

#[trace(promote(user_query = answer_column))]
fn b(user_query: &str) -> usize {
    user_query.len()
}

#[trace(promote(user_query, user_query = "q"))]
fn c(user_query: &str) -> usize {
    user_query.len()
}

#[trace(promote())]
fn d(user_query: &str) -> usize {
    user_query.len()
}

fn main() {}
