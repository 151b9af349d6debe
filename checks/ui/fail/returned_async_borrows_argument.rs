use std::future::Future;

use openlayer_trace::trace;

// A returned block without `move` that borrows an argument is refused, as it is without
// `#[trace]` (or with tracing compiled out): the block keeps its capture mode.
#[trace]
fn later(x: u32) -> impl Future<Output = u32> {
    async { x + 1 }
}

fn main() {
    let _ = later(1);
}
