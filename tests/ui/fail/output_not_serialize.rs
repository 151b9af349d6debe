use openlayer_trace::trace;

struct Connection {
    open: bool,
}

#[trace]
fn connect(url: &str) -> Connection {
    let _ = url;
    Connection { open: true }
}

fn main() {
    let _ = connect("local").open;
}
