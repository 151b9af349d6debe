use openlayer_trace::trace;

struct Connection {
    open: bool,
}

#[trace]
fn connect(url: &str) -> Connection {
    let _ = url;
    Connection { open: true }
}

// (An `impl Iterator` or `impl Stream` is traced as a stream; other `impl Trait`s are
// recorded as values.)
#[trace]
fn adder(n: u32) -> impl Fn(u32) -> u32 {
    move |x| x + n
}

fn main() {
    let _ = connect("local").open;
    let _ = adder(3)(1);
}
