use openlayer_trace::trace;

struct Token(u32);

#[trace]
fn tokens() -> impl Iterator<Item = Token> {
    (0..3).map(Token)
}

fn main() {}
