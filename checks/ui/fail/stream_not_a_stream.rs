use openlayer_trace::trace;

#[trace(stream)]
fn count(n: u32) -> u32 {
    n
}

fn main() {}
