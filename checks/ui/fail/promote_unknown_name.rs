use openlayer_trace::trace;

// A name that is not a parameter is an output field: an error where there is no output.
#[trace(promote(user_qeury))]
fn log_query(user_query: &str) {
    let _ = user_query;
}

// A stream's output has no fields.
#[trace(promote(score))]
fn tokens(prompt: &str) -> impl Iterator<Item = String> {
    vec![prompt.to_string()].into_iter()
}

// A future of nothing has no fields either.
#[trace(promote(score))]
fn later(x: u32) -> impl std::future::Future<Output = ()> {
    async move {
        let _ = x;
    }
}

fn main() {}
