use openlayer_trace::trace;

struct Connection {
    open: bool,
}

#[trace]
fn connect(url: &str) -> Connection {
    let _ = url;
    Connection { open: true }
}

#[trace]
fn countdown(from: u32) -> impl Iterator<Item = u32> {
    (0..=from).rev()
}

fn main() {
    let _ = connect("local").open;
    let _ = countdown(3).count();
}
