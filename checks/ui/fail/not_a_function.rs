use openlayer_trace::trace;

#[trace]
struct Retriever {
    top_k: usize,
}

trait Model {
    #[trace]
    fn complete(&self, prompt: &str) -> String;
}

fn main() {
    let _ = Retriever { top_k: 3 }.top_k;
}
