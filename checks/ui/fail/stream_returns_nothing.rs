use openlayer_trace::trace;

#[trace(stream)]
fn tokens(n: u32) {
    let _ = n;
}

fn main() {}
