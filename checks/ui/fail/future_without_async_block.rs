use std::future::Future;

use openlayer_trace::trace;

// The step would end when the future is made, not when it completes.
#[trace]
fn later(n: u32) -> impl Future<Output = u32> {
    std::future::ready(n)
}

fn main() {
    let _ = later(1);
}
